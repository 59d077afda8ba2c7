"""Training and checkpoints. Import submodules directly: `robopolicy.train.trainer`, `robopolicy.train.checkpoint`."""
