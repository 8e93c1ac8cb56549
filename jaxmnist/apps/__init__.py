"""The commands: train (the driver's command line) and the tools built on a trained model:
evaluate, predict, export, serve, plot, summary, sweep."""
