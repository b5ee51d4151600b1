"""process_docs / process_results of the wrapper task mmbench_en_dev_eff: upstream mmbench_en_dev's own scoring plus
the eff_* metrics (written by ``python -m sparsezip_lmms eff-tasks``; see sparsezip_lmms.efficiency.wrapping)."""

from sparsezip_lmms.efficiency.wrapping import upstream_function, wrapped_process_docs, wrapped_process_results

process_docs = wrapped_process_docs()
process_results = wrapped_process_results(upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_process_results'))
