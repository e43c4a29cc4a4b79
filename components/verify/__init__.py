"""What scripts/verify.py checks after a deploy, as plain functions the tests call: each mirror's
metrics (``metrics``), its registry API and a manifest through it (``mirror``), the registry VM's
cache disk (``vm_disk``), and with ``--nodes`` every node and whether its pulls went through its
mirror (``nodes``); the stack outputs they read (``outputs``); ``run`` runs them in order and
prints the table. No ``import pulumi``: it runs after a deploy, from the outputs.
"""
