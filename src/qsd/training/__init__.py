"""Training of the embedded defaults (notebook 00): the denoisers and the digit feature classifier."""
