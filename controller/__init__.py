"""lineinspect controller: synchronises a Siemens S7 PLC, a camera and inference workers so that
every part gets its own verdict before it reaches the reject gate, or the PLC rejects it."""
