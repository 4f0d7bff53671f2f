"""Real devices behind the ports (controller/ports.py): the S7 PLC (python-snap7), a Basler camera
(pypylon), a frame stream, the SQLite journal. Library errors are translated here. The simulator's
in-memory devices (sim/memory.py) implement the same ports."""
