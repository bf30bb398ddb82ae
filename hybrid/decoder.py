"""LTX-Video as the reconstruction decoder: diffusers' LTXPipeline without its text encoder, conditioned on the
[B, 64, 4096] encoder output passed as prompt_embeds (with an all-ones mask)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hybrid.contracts import valid_frame_count
from hybrid.profiles import Profile


class VideoDecoder:
    """Generates frames from conditioning; deterministic for a given seed.

    The denoising loop is diffusers' `LTXPipeline.__call__` for this use (no classifier-free guidance, the
    flow-matching Euler scheduler, no stochastic sampling) written as two calls, so that each can be one CUDA graph
    (`hybrid.acceleration.accelerate_decoder`): `denoise_step` (the transformer and the scheduler's update) and
    `decode_latents` (unpacking, the VAE, post-processing). What stays on the host per request is the initial noise
    from the seeds and one launch per step: the pipeline's own loop spent more host time per step than its graphed
    transformer took on the GPU. `tests/test_models.py` checks the two loops give the same frames.
    A batch of a prepared frame count runs in prepared chunks (padded up, or split).
    """

    FRAME_RATE = 25  # LTXPipeline's default: it scales the rotary positions in time

    def __init__(self, pipeline, height: int, width: int) -> None:
        self.pipeline = pipeline
        self.height = height
        self.width = width
        self.step: Callable[..., torch.Tensor] = self.denoise_step  # or graphed calls of the same functions
        self.finish: Callable[..., torch.Tensor] = self.decode_latents
        self.prepared: dict[int, tuple[int, ...]] = {}  # frames → batch sizes with graphs
        self._schedules: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        pipeline.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return self.pipeline.transformer.device

    def __call__(self, conditioning: torch.Tensor, num_frames: int, steps: int, seeds: list[int]) -> np.ndarray:
        """conditioning [B, 64, 4096] → frames [B, F, H, W, 3] uint8; one seed per batch item."""
        from hybrid.acceleration import pad_batch, plan_chunks

        chunks = []
        for start, stop, size in plan_chunks(conditioning.shape[0], self.prepared.get(num_frames, ())):
            padded = pad_batch(conditioning[start:stop], size)
            chunk_seeds = seeds[start:stop] + [0] * (size - (stop - start))
            chunks.append(self.run(padded, num_frames, steps, chunk_seeds)[: stop - start])
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def latent_shape(self, num_frames: int) -> tuple[int, int, int]:
        """(frames, height, width) of the latent video: the VAE compresses time 8× and space 32×."""
        p = self.pipeline
        frames = (num_frames - 1) // p.vae_temporal_compression_ratio + 1
        return frames, self.height // p.vae_spatial_compression_ratio, self.width // p.vae_spatial_compression_ratio

    def schedule(self, steps: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [steps], sigma steps [steps]) on the device, as LTXPipeline sets its scheduler up: linear
        sigmas shifted by the sequence length. Computed once per (steps, frames)."""
        key = (steps, num_frames)
        if key not in self._schedules:
            from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

            scheduler = self.pipeline.scheduler
            frames, height, width = self.latent_shape(num_frames)
            mu = calculate_shift(
                frames * height * width,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.15),
            )
            sigmas = np.linspace(1.0, 1 / steps, steps).tolist()
            timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, None, sigmas=sigmas, mu=mu)
            all_sigmas = scheduler.sigmas  # steps + 1 values, the last 0
            self._schedules[key] = (timesteps, (all_sigmas[1:] - all_sigmas[:-1]).to(self.device))
        return self._schedules[key]

    def denoise_step(
        self,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        timestep: torch.Tensor,
        dt: torch.Tensor,
        latent_shape: tuple[int, int, int],
    ) -> torch.Tensor:
        """One step: the transformer's velocity at `timestep`, then the Euler update (float32 latents)."""
        p = self.pipeline
        frames, height, width = latent_shape
        velocity = p.transformer(
            hidden_states=latents.to(embeds.dtype),
            encoder_hidden_states=embeds,
            timestep=timestep,
            encoder_attention_mask=mask,
            num_frames=frames,
            height=height,
            width=width,
            rope_interpolation_scale=(
                p.vae_temporal_compression_ratio / self.FRAME_RATE,
                p.vae_spatial_compression_ratio,
                p.vae_spatial_compression_ratio,
            ),
            return_dict=False,
        )[0].float()
        return latents + dt * velocity

    def decode_latents(self, latents: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """Packed latents [B, S, C] → frames [B, F, H, W, 3] uint8: unpack, denormalize, VAE decode, to [0, 255]."""
        p = self.pipeline
        frames, height, width = latent_shape
        video = p._unpack_latents(
            latents, frames, height, width, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size
        )
        video = p._denormalize_latents(video, p.vae.latents_mean, p.vae.latents_std, p.vae.config.scaling_factor)
        video = video.to(self.pipeline.transformer.dtype).to(p.vae.dtype)
        # LTX-Video 0.9.1+ VAEs condition on a decode timestep; the pipeline's default is 0 with a noise scale of 0,
        # which leaves the latents as they are.
        decode_timestep = torch.zeros(video.shape[0], device=video.device, dtype=video.dtype)
        timestep = decode_timestep if p.vae.config.timestep_conditioning else None
        video = p.vae.decode(video, timestep, return_dict=False)[0]
        video = p.video_processor.postprocess_video(video, output_type="pt")  # [B, F, C, H, W] in [0, 1]
        return (video.permute(0, 1, 3, 4, 2).float().clamp(0, 1) * 255).round().to(torch.uint8)

    @torch.inference_mode()
    def run(self, conditioning: torch.Tensor, num_frames: int, steps: int, seeds: list[int]) -> np.ndarray:
        """One diffusion run over the whole batch."""
        if not valid_frame_count(num_frames):
            raise ValueError(f"LTX-Video decodes 8k+1 frames (1, 9, 17, …), not {num_frames}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        p = self.pipeline
        batch = conditioning.shape[0]
        embeds = conditioning.to(self.device, p.transformer.dtype)
        mask = torch.ones(batch, conditioning.shape[1], dtype=torch.long, device=self.device)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        latents = p.prepare_latents(
            batch,
            p.transformer.config.in_channels,
            self.height,
            self.width,
            num_frames,
            torch.float32,
            self.device,
            generators,
        )
        timesteps, dts = self.schedule(steps, num_frames)
        shape = self.latent_shape(num_frames)
        for i in range(steps):
            latents = self.step(latents, embeds, mask, timesteps[i].expand(batch), dts[i], shape)
        return self.finish(latents, shape).cpu().numpy()


def build_decoder(profile: Profile, device: str | torch.device = "cpu") -> VideoDecoder:
    """LTX-Video for `profile`: seeded random transformer and VAE, or a local diffusers directory."""
    # From their modules: diffusers' lazy top-level names resolve to its dummy classes for a type checker.
    from diffusers.models.autoencoders.autoencoder_kl_ltx import AutoencoderKLLTXVideo
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    cfg = profile.decoder
    dtype = getattr(torch, profile.dtype)
    if profile.random_weights or cfg.checkpoint is None:
        torch.manual_seed(profile.seed)
        with torch.device(device):  # initialize on the target device: seconds for 2B parameters on a GPU
            transformer = LTXVideoTransformer3DModel(**cfg.transformer)
            vae = AutoencoderKLLTXVideo(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.vae.items()})
        # Small latents: whole-clip decoding (LTX's defaults split frames only for memory on long clips).
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        pipeline = LTXPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            # No T5: the fusion output is the prompt embedding (diffusers annotates the encoder as required).
            text_encoder=None,  # type: ignore[arg-type]
            tokenizer=None,
            transformer=transformer,
        )
    else:
        pipeline = LTXPipeline.from_pretrained(
            cfg.checkpoint, text_encoder=None, tokenizer=None, torch_dtype=dtype, local_files_only=True
        )
    pipeline = pipeline.to(device=device) if dtype == torch.float32 else pipeline.to(device=device, dtype=dtype)
    return VideoDecoder(pipeline, cfg.height, cfg.width)
