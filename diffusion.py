"""
CogVideoX diffusion maths, shared by train.py and sample.py.

Everything is discrete DDPM (t = 0..999, 0 = clean) with v-prediction:
    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps          (a_t = alpha-bar, the cumulative product)
    v   = sqrt(a_t) eps - sqrt(1 - a_t) x0          (what the DiT predicts)
    x0  = sqrt(a_t) x_t - sqrt(1 - a_t) v           eps = sqrt(a_t) v + sqrt(1 - a_t) x_t
The schedule, both samplers and the dynamic-CFG formula reproduce diffusers'
CogVideoXDDIMScheduler / CogVideoXDPMScheduler / CogVideoX pipelines (tests/test_diffusion.py
compares them step for step). The identity-preservation loss is StM's Eq. 3-4.

    sched = Schedule()                                  # 5B / 5B-I2V; snr_shift_scale=3.0 for 2B
    t = sched.sample_t(B); xt = sched.add_noise(x0, eps, t)
    x0_hat = sched.x0_from_v(xt, model(xt, t), t)
    loss, fg, bg = identity_loss(x0_hat, x0, latent_mask(pixel_mask), sched.loss_weight(t))
    x0 = sched.sample(v_fn, torch.randn(shape), steps=50, sampler="dpm", generator=g)
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from plumbing import weights
from plumbing.files import atomic_write_text

SCHEDULER_CONFIG = "scheduler_config.json"


def _bcast(a, x):
    """(B,) per-sample coefficients -> (B, 1, 1, 1, 1) in x's dtype and device."""
    return a.to(x.device).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class Schedule:
    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, snr_shift_scale=1.0):
        self.T = num_train_timesteps
        # "scaled linear" betas: linear in sqrt(beta). float64 throughout, as diffusers.
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        a = torch.cumprod(1.0 - betas, dim=0)
        # 1) SNR shift: SNR' = SNR / s, i.e. a' = a / (s + (1 - s) a). CogVideoX-2B uses s = 3, 5B s = 1.
        a = a / (snr_shift_scale + (1 - snr_shift_scale) * a)
        # 2) THEN zero-terminal-SNR (Lin et al. 2023, Alg. 1): shift and scale sqrt(a) so that
        #    sqrt(a_0) is unchanged and sqrt(a_999) = 0 -> the last step is pure noise.
        s = a.sqrt()
        s = (s - s[-1]) * s[0] / (s[0] - s[-1])
        self.alphas_cumprod = s ** 2  # (T,) float64; a_0 = 0.99915, a_500 = 0.2410, a_999 = 0 for s = 1
        self.config = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                           snr_shift_scale=snr_shift_scale)

    @classmethod
    def from_pretrained(cls, path_or_id, subfolder="scheduler"):
        """A diffusers CogVideoX scheduler config (scheduler_config.json in the folder, its scheduler/, or the hub
        repo's) -> its Schedule. Only what this file implements is accepted: scaled-linear betas, v-prediction, zero
        terminal SNR. FileNotFoundError where a local folder has none."""
        path = weights.config_file(path_or_id, subfolder, SCHEDULER_CONFIG)
        try:
            c = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable scheduler config ({type(e).__name__}: {e})") from None
        need = dict(beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True)
        off = {k: c.get(k, v) for k, v in need.items() if c.get(k, v) != v}
        if off:
            raise ValueError(f"{path}: {off}; this code implements {need}")
        return cls(**{k: c[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "snr_shift_scale") if k in c})

    def save(self, folder):
        """-> folder/scheduler_config.json, the CogVideoX DDIM scheduler's config with this schedule's numbers."""
        c = {"_class_name": "CogVideoXDDIMScheduler", **self.config, "beta_schedule": "scaled_linear",
             "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
             "set_alpha_to_one": True, "clip_sample": False, "steps_offset": 0}
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(folder) / SCHEDULER_CONFIG, json.dumps(c, indent=2))

    def _a(self, t, x):
        return _bcast(self.alphas_cumprod.to(t.device)[t], x)

    # ---- training ---------------------------------------------------------------------------
    def sample_t(self, batch, generator=None, device=None):
        """Uniform integer timesteps in [0, T), as every CogVideoX trainer draws them."""
        dev = generator.device if generator is not None else device
        return torch.randint(0, self.T, (batch,), generator=generator, device=dev).to(device)

    def add_noise(self, x0, noise, t):
        a = self._a(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def v_target(self, x0, noise, t):
        a = self._a(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def x0_from_v(self, xt, v, t):
        a = self._a(t, xt)
        return a.sqrt() * xt - (1 - a).sqrt() * v

    def eps_from_v(self, xt, v, t):
        a = self._a(t, xt)
        return a.sqrt() * v + (1 - a).sqrt() * xt

    def loss_weight(self, t):
        """CogVideoX's w(t) = 1/(1 - a_t), used on the x0-space error. Since x0_hat - x0 =
        sqrt(1 - a_t)(v - v_hat), w(t)*(x0_hat - x0)^2 is exactly the plain squared error on v."""
        return (1.0 / (1.0 - self.alphas_cumprod.to(t.device)[t])).float()

    # ---- sampling ---------------------------------------------------------------------------
    def timesteps(self, num_inference_steps, spacing="trailing"):
        """Descending DDPM indices. "trailing" (CogVideoX 5B config) starts at T-1 exactly:
        round(arange(T, 0, -T/N)) - 1, e.g. N=50 -> 999, 979, ..., 19."""
        n = num_inference_steps
        assert 1 <= n <= self.T
        if spacing == "trailing":
            ts = torch.arange(self.T, 0, -self.T / n, dtype=torch.float64).round() - 1
        elif spacing == "linspace":  # some third-party CogVideoX configs
            ts = torch.linspace(0, self.T - 1, n, dtype=torch.float64).round().flip(0)
        else:
            raise ValueError(spacing)
        return ts.long()

    def _a_prev(self, t, n):
        # diffusers takes the "previous" index as t - T//N, not the next entry of the timestep
        # list (they differ by 1 when N does not divide T). Below 0 it uses a = 1 (clean,
        # set_alpha_to_one=True), and the step returns the x0 estimate itself. The last step
        # lands below 0 for N = 50 (19 - 20) but on t = 0 when round(T/N) > T//N (N = 7: 142 - 142).
        tp = t - self.T // n
        return self.alphas_cumprod[tp] if tp >= 0 else torch.tensor(1.0, dtype=torch.float64)

    def ddim_step(self, v, t, x, num_inference_steps):
        """Deterministic DDIM (eta = 0) from x_t to x_prev. Returns (x_prev, x0_hat)."""
        a, a_prev = self.alphas_cumprod[t], self._a_prev(t, num_inference_steps)
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps_hat, with eps_hat rewritten via x and x0
        c_x = ((1 - a_prev) / (1 - a)).sqrt()
        return c_x * x + (a_prev.sqrt() - a.sqrt() * c_x) * x0, x0

    def dpm_step(self, v, old_x0, t, t_back, x, num_inference_steps, generator=None):
        """CogVideoX's stochastic DPM-Solver++(2M) (SDE variant) in half-log-SNR lambda.
        old_x0 / t_back: the previous step's x0 estimate and timestep (None on the first step).
        Returns (x_prev, x0_hat); x0_hat is the next call's old_x0."""
        a, a_prev = self.alphas_cumprod[t], self._a_prev(t, num_inference_steps)
        x0 = a.sqrt() * x - (1 - a).sqrt() * v

        def lam(ab):  # lambda = log(alpha / sigma); -inf at a = 0 (t = 999), +inf at a = 1
            return (ab / (1 - ab)).sqrt().log()

        h = lam(a_prev) - lam(a)  # float64 infinities give the right limits at both ends
        c_x = ((1 - a_prev) / (1 - a)).sqrt() * (-h).exp()
        c_x0 = -(-2 * h).expm1() * a_prev.sqrt()  # = sqrt(a_prev) (1 - e^{-2h})
        c_noise = (1 - a_prev).sqrt() * (1 - (-2 * h).exp()).sqrt()

        def noise():  # drawn on the generator's device in x's dtype, as diffusers' randn_tensor
            dev = generator.device if generator is not None else x.device
            return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)

        # First-order update. diffusers always draws this noise, even when the 2nd-order update
        # below replaces the result, so the generator advances twice on such steps.
        x_prev = c_x * x + c_x0 * x0 + c_noise * noise()
        if old_x0 is None or t - self.T // num_inference_steps < 0:
            return x_prev, x0  # first step, or a step to "t < 0" (a_prev = 1: x_prev = x0 exactly)
        # Second order: extrapolate x0 linearly in lambda with the previous estimate,
        # D = (1 + 1/2r) x0 - (1/2r) old_x0, r = h_last / h.
        r = (lam(a) - lam(self.alphas_cumprod[t_back])) / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        return c_x * x + c_x0 * d + c_noise * noise(), x0

    def scale_eps(self, v, x, t, k, below=None):
        """The v that makes a step move along k times the model's noise estimate: eps' = k eps_hat, and the x0
        estimate that goes with it on the same x_t, x0' = (x_t - sqrt(1 - a) eps') / sqrt(a). This is Ning et al.
        2024's "epsilon scaling" against exposure bias (they divide by lambda = 1/k); k > 1 takes more noise out
        per step. Steps with t >= below (None: none) are left plain, and so is a = 0 (t = T-1 under zero-terminal
        SNR), where x_t is the noise itself: v is returned as is."""
        a = self.alphas_cumprod[t]
        if k == 1 or a == 0 or (below is not None and t >= below):
            return v
        eps = k * (a.sqrt() * v + (1 - a).sqrt() * x)                  # k eps_from_v
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).to(v.dtype)      # v of (x0', eps')

    @torch.no_grad()
    def sample(self, v_fn, x_T, steps=50, sampler="ddim", generator=None, progress=True, eps_scale=1.0,
               eps_below=None):
        """Run the reverse process from pure noise x_T. v_fn(x_t, t, i) -> v, with t a (B,)
        LongTensor and i the step index (do classifier-free guidance inside v_fn, see cfg_scale).
        Like the diffusers pipeline, the model output is cast to fp32, each update is cast back to
        x_T's dtype, and the returned latent is the last step's x_prev. For N = 50 (and any N
        with round(T/N) == T//N) that is exactly the last x0 estimate (a_prev = 1); otherwise
        the last step stops at t = 0 (a_0 = 0.99915), as diffusers does. eps_scale: see scale_eps (1: off), on the
        steps with t < eps_below only (None: every step)."""
        ts = self.timesteps(steps)
        x, old_x0 = x_T, None
        for i, t in enumerate(tqdm(ts.tolist(), disable=not progress, desc=sampler)):
            v = v_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), i).float()
            v = self.scale_eps(v, x.float(), t, eps_scale, eps_below)
            if sampler == "ddim":
                x_new, _ = self.ddim_step(v, t, x, steps)
            elif sampler == "dpm":
                t_back = ts[i - 1].item() if i > 0 else None
                x_new, old_x0 = self.dpm_step(v, old_x0, t, t_back, x, steps, generator)
            else:
                raise ValueError(f"unknown sampler {sampler!r}")
            x = x_new.to(x_T.dtype)
        return x


def cfg_scale(guidance, i, t, steps, dynamic=False):
    """Classifier-free guidance scale for step i at timestep t (v = v_u + scale (v_c - v_u)).
    dynamic=True is the CogVideoX pipeline's `use_dynamic_cfg` formula, which -- as written
    there -- uses the DDPM timestep t (0..999), not the step index i, in ((N - t)/N)^5 with
    N = steps. That makes the base negative and large, so the scale oscillates; we reproduce it
    as is so that results match diffusers (i is accepted for callers who want to experiment)."""
    if not dynamic:
        return guidance
    return 1 + guidance * (1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2


# ---- StM identity-preservation loss (paper Eq. 3-4, StM release) ------------------------------
def latent_mask(mask, t_comp=4, s_comp=8):
    """Pixel mask (B, 1, T, H, W) in {0,1}, T = 4k+1 -> latent grid (B, 1, k+1, H/8, W/8),
    following the causal VAE: frame 0 alone, then the max over each group of 4 frames, then an
    s x s spatial max pool (a latent cell is foreground if any pixel it covers is)."""
    B, _, T, H, W = mask.shape
    assert (T - 1) % t_comp == 0 and H % s_comp == 0 and W % s_comp == 0, mask.shape
    m = mask.float()
    rest = m[:, :, 1:].reshape(B, 1, (T - 1) // t_comp, t_comp, H, W).amax(dim=3)
    m = torch.cat([m[:, :, :1], rest], dim=2)
    return F.max_pool3d(m, kernel_size=(1, s_comp, s_comp))


def identity_loss(pred_x0, x0, mask_lat, weight, alpha=0.5):
    """alpha * L_fg + (1 - alpha) * L_bg with se = w(t) (x0_hat - x0)^2 and, per sample,
    L_region = sum(se * region) / (sum(region) * C), then the batch mean.
    Empty regions: when a sample has no fg (or no bg) cell, that region's mean is replaced by
    the sample's whole-frame mean of se, so an empty or full mask gives exactly plain_loss and
    neither term is dropped nor divided by zero.
    Returns (loss, fg_loss, bg_loss); the last two detached batch means, for logging."""
    se = _bcast(weight, x0.float()) * (pred_x0.float() - x0.float()) ** 2  # (B, C, T, H, W)
    dims, C = tuple(range(1, se.ndim)), se.shape[1]
    m = mask_lat.float()
    whole = se.mean(dims)  # (B,)

    def region_mean(r):
        n = r.sum(dims) * C
        return torch.where(n > 0, (se * r).sum(dims) / torch.where(n > 0, n, 1.0), whole)

    fg, bg = region_mean(m), region_mean(1 - m)
    loss = (alpha * fg + (1 - alpha) * bg).mean()
    return loss, fg.mean().detach(), bg.mean().detach()


def plain_loss(pred_x0, x0, weight):
    """CogVideoX's loss mean(w(t) (x0_hat - x0)^2): the ablation without the identity loss."""
    return (_bcast(weight, x0.float()) * (pred_x0.float() - x0.float()) ** 2).mean()
