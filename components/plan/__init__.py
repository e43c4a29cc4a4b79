"""Reading a node and deciding what to send it: the probe's output parsed (``node_probe``), the
node's plan decided from it (``node_plan``), and every step's exact command and stdin
(``node_steps``, which run scripts/node/*.sh). Pure: no ``import pulumi``."""
