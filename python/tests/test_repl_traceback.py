"""Post-mortem tracebacks start at the user's code: the wrapper scry puts around a worker's
``run`` (to open a crash REPL) is not shown as the outermost frame."""

import types

from scry import _repl


def test_scry_wrapper_frames_are_left_out_of_a_post_mortem_traceback(monkeypatch):
    def user_task():
        raise ValueError("bad input")

    class BaseProcess(object):
        def run(self):
            user_task()

    seen = []
    # What the crash REPL is given: the exception as the wrapper caught it.
    monkeypatch.setattr(_repl, "_crash", lambda exc, tb=None: seen.append((exc, tb)))
    module = types.SimpleNamespace(BaseProcess=BaseProcess)
    _repl._patch_process(module)
    try:
        module.BaseProcess().run()
    except ValueError:
        pass
    exc, tb = seen[0]
    # The wrapper is the outermost frame of the traceback it caught; the REPL starts below it.
    assert tb.tb_frame.f_code.co_filename == _repl.__file__
    assert _repl._user_tb(tb).tb_frame.f_code.co_name == "run"
    assert _repl._user_tb(tb).tb_frame.f_code.co_filename == __file__
    text = _repl._format_exc(exc, tb)
    assert "_repl.py" not in text, text
    assert "user_task" in text and "ValueError: bad input" in text


def test_a_traceback_of_scry_frames_only_is_kept_whole():
    try:
        _repl._user_tb(None).tb_frame  # noqa: B018 -- raises AttributeError inside this file
    except AttributeError as exc:
        tb = exc.__traceback__
    assert _repl._user_tb(tb) is tb
