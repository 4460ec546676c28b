"""The embedded broker's start-up read: two lines of output at once are both seen.

A buffered pipe reader took "tansu broker ..." and "listening on ..." in one read, handed back
the first, kept the second, and the selector then waited out the whole start deadline for
output already read (14 starts in 100 failed so, costing 5 s each, and all four retries now
and then).
"""

from __future__ import annotations

from killswitch.sim.broker import TansuBroker, _spawn


def test_the_listening_line_is_seen_when_it_comes_with_the_line_before_it() -> None:
    broker = TansuBroker(port=1)
    # Both lines in one write, then the process stays up (as the broker does).
    proc = _spawn(["sh", "-c", "printf 'tansu broker 0.6.0\\nlistening on 1\\n'; sleep 30"])
    try:
        broker._read_until_listening(proc)  # raised _NotListening after 5 s before the fix
        assert broker.output[-1].startswith("listening on")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
