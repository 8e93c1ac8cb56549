"""The maths a student reads: the models, the input transforms, the loss and steps, the compiled
chunk of steps. Pure functions and Flax modules only: no files, no signals, no processes."""
