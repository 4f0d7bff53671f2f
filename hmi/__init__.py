"""Operator-panel (HMI) access to the controller: an OPC UA server publishing `LineStatus`, in its own
process (hmi/process.py starts and feeds it; hmi/child.py is that process; hmi/server.py the server).

Not here: the controller's logic or any control path; the HMI only observes."""
