"""Shared by the GPU tests: capture a list of kernel calls in global mode, directly or prepared."""


def capture_global(stream, calls, prepare=None):
    """Capture `fn(*args)` for each (fn, args) of `calls` on `stream` in global mode; with `prepare`
    (a kernels module's prepare) the launchers are built first and only they run under capture."""
    from cupy.cuda import runtime

    if prepare:
        launchers = [prepare(fn, *args) for fn, args in calls]
    else:
        launchers = [lambda f=fn, a=args: f(*a) for fn, args in calls]
    stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
    for launch in launchers:
        launch()
    return stream.end_capture()
