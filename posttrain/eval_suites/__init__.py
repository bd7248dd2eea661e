"""Standard verifiable evaluations (``posttrain eval MODEL --suite gsm8k,math500,ifeval``):
GSM8K test, MATH-500 and IFEval, each with its usual prompt shape and metric, read from the
hub by the data set's public name or from a local file."""

from posttrain.eval_suites.runner import format_summary, load_suite_rows, parse_data_args, run_suites, score_suite
from posttrain.eval_suites.suites import SUITES, Suite, get_suite, parse_suites

__all__ = ["SUITES", "Suite", "format_summary", "get_suite", "load_suite_rows", "parse_data_args", "parse_suites",
           "run_suites", "score_suite"]
