"""A Ctrl-C during a step's writes arrives after them.

Python runs a SIGINT handler between any two bytecodes, so a KeyboardInterrupt can land
between a batch's kernel and the advance of its step counters: the params and moments would
then have taken a step their counters do not know of, and the next step would use the wrong
bias correction. While the step writes, a SIGINT is held back and delivered, to the handler
that was installed, once every batch and counter is done: an interrupted step is either not
begun or complete. (Only the main thread receives signals and may install handlers; in other
threads, and while torch.compile traces, nothing is held back.)
"""
import signal
import threading

try:  # the C functions under signal's: no enum conversion of every handler (~10 us per step)
    import _signal as _raw
except ImportError:
    _raw = signal


class HeldInterrupts:
    """Context manager: SIGINTs that arrive inside are delivered on exit."""

    def __init__(self):
        self._previous = None
        self._pending = []

    def _hold(self, signum, frame):
        self._pending.append((signum, frame))

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        previous = _raw.getsignal(signal.SIGINT)
        if previous is None:  # a handler installed outside Python: left alone (it could not be restored)
            return self
        try:
            _raw.signal(signal.SIGINT, self._hold)
        except ValueError:  # the main thread of an embedded interpreter may still refuse
            return self
        self._previous = previous
        return self

    def __exit__(self, *exc_info):
        if self._previous is None:
            return False
        _raw.signal(signal.SIGINT, self._previous)
        if self._pending:
            signum, frame = self._pending[0]
            self._pending.clear()
            if callable(self._previous):
                self._previous(signum, frame)  # the default handler raises KeyboardInterrupt here
            elif self._previous == signal.SIG_DFL:
                signal.raise_signal(signum)
        return False
