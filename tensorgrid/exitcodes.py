"""Exit codes of every TensorGrid command, in one table."""

OK = 0
ERROR = 1  # a TensorGridError: the message says what to fix
USAGE = 2  # bad command line (argparse uses 2 as well)
JOB_FAILED = 3  # `tensorgrid job watch/result`: the job ended failed or cancelled
UNAVAILABLE = 4  # the coordinator could not be reached
INTERRUPTED = 130  # Ctrl-C / a second SIGTERM
