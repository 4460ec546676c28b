"""Is each account ready to be killed on: the checks `killswitch preflight` prints (`checks`),
and the daemon's rounds of them, at start and every few minutes (`service`)."""
