"""Operator-panel (HMI) access to the controller: an OPC UA server publishing `LineStatus`.

Not here: the controller's logic or any control path; the HMI only observes."""
