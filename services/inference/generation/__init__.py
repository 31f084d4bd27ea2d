"""The denoising work: plain torch and diffusers code that knows nothing of gRPC.

Every function takes already-loaded components (UNet, VAE, text encoders, a scheduler
config) and plain values; loading and caching models is the model cache's business. The
whole operations (`operations.text_to_image`, `image_to_image`) are built from the same
building blocks a node graph calls one by one (`conditioning.encode_prompt`,
`noise.create_noise`, `denoise.denoise_latents`, `vae.decode_latents`,
`vae.encode_image`), so both paths give the same pixels for the same inputs.
"""
