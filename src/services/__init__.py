"""The service layer: observe and apply for each subsystem, written against ports only.

Domain code decides; code here reads the guest through ports, asks the domain
for a plan and carries it out through ports. It never imports an adapter, so
the same service runs against the real guest and against the in-memory fakes.
"""
