"""Image-quality and cost metrics: FID (custom or Inception features), prompt accuracy, CLIP score, proxies."""
