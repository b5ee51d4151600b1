"""process_docs / process_results of the wrapper task gqa_eff: upstream gqa's own scoring plus
the eff_* metrics (written by ``python -m sparsezip_lmms eff-tasks``; see sparsezip_lmms.efficiency.wrapping)."""

from sparsezip_lmms.efficiency.wrapping import upstream_function, wrapped_process_docs, wrapped_process_results

_loaded: dict = {}  # one fresh copy of each upstream module per load of this file, as lmms-eval loads them
process_docs = wrapped_process_docs(upstream_function('lmms_eval.tasks.gqa.utils', 'gqa_process_docs', _loaded))
process_results = wrapped_process_results(registered=[('exact_match', {'ignore_case': True, 'ignore_punctuation': True})], target='answer')

# the task's own functions the YAML references
upstream__utils__gqa_doc_to_text = upstream_function('lmms_eval.tasks.gqa.utils', 'gqa_doc_to_text', _loaded)
upstream__utils__gqa_doc_to_visual = upstream_function('lmms_eval.tasks.gqa.utils', 'gqa_doc_to_visual', _loaded)
