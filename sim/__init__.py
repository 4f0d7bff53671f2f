"""The line simulator: conveyor, encoder, photo-eye, parts, an S7 PLC running the interface's rules
on python-snap7's server, a camera that streams each part's image, and a judge that scores a run.
Runtime code never imports this package; only the CLI's simulator commands do (sim/runner.py)."""
