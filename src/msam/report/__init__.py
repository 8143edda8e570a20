"""Tables and figures from run directories (the source of truth; wandb is only a mirror)."""
