"""process_docs / process_results of the wrapper task mmbench_en_dev_static_eff: upstream mmbench_en_dev_static's own scoring plus
the eff_* metrics (written by ``python -m sparsezip_lmms eff-tasks``; see sparsezip_lmms.efficiency.wrapping)."""

from sparsezip_lmms.efficiency.wrapping import upstream_function, wrapped_process_docs, wrapped_process_results

_loaded: dict = {}  # one fresh copy of each upstream module per load of this file, as lmms-eval loads them
process_docs = wrapped_process_docs()
process_results = wrapped_process_results(upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_process_results', _loaded))

# the task's own functions the YAML references
upstream__en_utils__mmbench_aggregate_dev_results_static = upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_aggregate_dev_results_static', _loaded)
upstream__en_utils__mmbench_aggregate_dev_results_submission = upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_aggregate_dev_results_submission', _loaded)
upstream__en_utils__mmbench_doc_to_text = upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_doc_to_text', _loaded)
upstream__en_utils__mmbench_doc_to_visual = upstream_function('lmms_eval.tasks.mmbench.en_utils', 'mmbench_doc_to_visual', _loaded)
