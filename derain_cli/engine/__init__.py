"""What every command shares: device choice, tiled inference, (later) the training loop."""
