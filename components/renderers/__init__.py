"""Pure renderers: plain values in, file text out. No ``import pulumi`` anywhere below here."""
