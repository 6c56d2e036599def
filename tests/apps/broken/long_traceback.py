# An import error whose traceback is longer than one nginx log entry (2 KiB), as a deep import
# chain of a large app gives.
raise RuntimeError("the app refuses to start: " + "a long reason, " * 200 + "and the end of it")
