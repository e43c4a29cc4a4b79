"""Registry mirrors: pure settings/renderers, Pulumi components, node scripts (in scripts/)."""
