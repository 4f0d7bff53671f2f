"""The pure core: part tracking, deadlines, association, the PLC's byte layouts, the verdict block,
the time budget and resuming. No I/O, no clock, no asyncio (import-linter keeps it so), so all of
it is tested exhaustively with Hypothesis."""
