"""Where the driver's Ray log lines go when optidel connects to Ray itself: into OUT/logs/, and
onto the console only those at or above the level that optidel's log level implies.

Ray speaks in two places in the driver. Its Python loggers (`ray`, `ray.data`) each have their
own console handler and do not propagate: those handlers get the console level, and a file
handler in OUT/logs/ gets INFO and above (DEBUG too under --verbose). Its C++ core worker writes
straight to file descriptor 2, where no Python setting reaches: on a successful run its one line
there is an ERROR that Ray prints for every Ray Data actor pool allowed restarts
(ray-project/ray#57733: Ray Data hands its actors their constructor arguments through the object
store). So, except under --verbose, file descriptor 2 goes to OUT/logs/ray-native.log, and
Python's stderr (our log, tracebacks, Ray's Python console handlers) to a copy of the console.

This module imports no Ray: it only configures loggers by name and file descriptors.
"""

from __future__ import annotations

import logging
import os
import sys

LOGS_DIR = "logs"
PYTHON_LOG = "ray.log"  # the driver's Ray Python loggers
NATIVE_LOG = "ray-native.log"  # the driver's Ray C++ core worker (file descriptor 2)
RAY_LOGGERS = ("ray", "ray.data")
FILE_HANDLER = "optidel-out-logs"
RAY_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"  # Ray's own


def console_level(level: int) -> int:
    """Ray's console threshold for optidel's log level: --verbose (DEBUG) shows all Ray says,
    the default (INFO) its warnings and errors, --quiet (WARNING) and above its errors only."""
    if level <= logging.DEBUG:
        return logging.DEBUG
    return logging.WARNING if level <= logging.INFO else logging.ERROR


def route(level: int, directory: str | None) -> None:
    """Ray's console handlers to console_level(level) and, given a directory, Ray's lines (INFO
    and above, all under --verbose) into it, for the rest of the process: Ray logs until it exits."""
    for name in RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if _is_console(handler):
                handler.setLevel(console_level(level))
    if directory is None:  # OUT is not on a local file system: Ray's files stay in its session
        return
    os.makedirs(directory, exist_ok=True)
    to_file = logging.FileHandler(os.path.join(directory, PYTHON_LOG), encoding="utf-8")
    to_file.set_name(FILE_HANDLER)
    to_file.setFormatter(logging.Formatter(RAY_FORMAT))
    to_file.setLevel(min(level, logging.INFO))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for earlier in [h for h in logger.handlers if h.get_name() == FILE_HANDLER]:  # an earlier run's OUT
            logger.removeHandler(earlier)
            earlier.close()
        logger.addHandler(to_file)
    if level > logging.DEBUG:
        _native_stderr_to(os.path.join(directory, NATIVE_LOG))


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _follows_sys_stderr(handler: logging.Handler) -> bool:
    """A handler whose stream is a read-only property that returns sys.stderr at each write
    (logging's last-resort class, which some libraries install): it follows the move by itself."""
    return isinstance(getattr(type(handler), "stream", None), property)


def _native_stderr_to(path: str) -> None:
    """Point file descriptor 2 at `path`. Where Python's stderr was file descriptor 2 (a
    terminal, a pipe), it moves to a copy of the console, and so do the log handlers that
    wrote to it; where it was something else (pytest's capture, a notebook), it stays."""
    python_stderr = sys.stderr
    try:
        python_stderr.flush()
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # no real file behind it
        on_fd2 = False
    console = os.dup(2)
    native = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(native, 2)
    os.close(native)
    if not on_fd2:
        os.close(console)
        return
    moved = os.fdopen(console, "w", buffering=1, encoding=python_stderr.encoding, errors=python_stderr.errors)
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if _is_console(handler) and not _follows_sys_stderr(handler) and handler.stream is python_stderr:
                handler.setStream(moved)
    sys.stderr = moved
