"""Reading a node and deciding what to send it: the probe's output parsed (``node_probe``), and
every node step's exact command and stdin (``node_steps``, which run scripts/node/*.sh).
Pure: no ``import pulumi``."""
