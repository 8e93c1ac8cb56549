"""jaxmnist: the lab's MNIST CNN, trained in pure, functional JAX."""
