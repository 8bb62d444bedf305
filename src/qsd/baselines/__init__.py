"""The published PTQ baselines in qsd's harness (baselines.md): one method per file, each
`quantize(denoiser, calibration, w_bits, a_bits, settings) -> BaselineResult` on a copy of the float denoiser."""
