"""Scripted faults for bench/faults.py: one module per scenario (its name with `_` for `-`),
each with `DEFAULT_AGENTS`, `TARGET` (one line) and `async def run(agents, workdir) ->
FaultReport`; the figures every scenario reports are in faultkit.report, the ways to read them
off a lab in faultkit.fleet."""
