"""process_docs / process_results of the wrapper task mmmu_val_eff: upstream mmmu_val's own scoring plus
the eff_* metrics (written by ``python -m sparsezip_lmms eff-tasks``; see sparsezip_lmms.efficiency.wrapping)."""

from sparsezip_lmms.efficiency.wrapping import upstream_function, wrapped_process_docs, wrapped_process_results

_loaded: dict = {}  # one fresh copy of each upstream module per load of this file, as lmms-eval loads them
process_docs = wrapped_process_docs()
process_results = wrapped_process_results(upstream_function('lmms_eval.tasks.mmmu.utils', 'mmmu_process_results', _loaded))

# the task's own functions the YAML references
upstream__utils__mmmu_aggregate_results = upstream_function('lmms_eval.tasks.mmmu.utils', 'mmmu_aggregate_results', _loaded)
upstream__utils__mmmu_doc_to_messages = upstream_function('lmms_eval.tasks.mmmu.utils', 'mmmu_doc_to_messages', _loaded)
upstream__utils__mmmu_doc_to_text = upstream_function('lmms_eval.tasks.mmmu.utils', 'mmmu_doc_to_text', _loaded)
upstream__utils__mmmu_doc_to_visual = upstream_function('lmms_eval.tasks.mmmu.utils', 'mmmu_doc_to_visual', _loaded)
