"""The clustering phase: a DEC clustering layer on the CAE embedding.

Deep embedded clustering (Xie, Girshick and Farhadi 2016) with the reconstruction term kept
(DCEC, Guo et al. 2017), as in Ryan et al., "Cluster Activation Mapping with Applications
to Medical Imaging":

- soft assignment (eq. 4): ``q_ik`` proportional to ``(1 + ||z_i - mu_k||^2)^-1``,
  a Student t kernel with one degree of freedom, normalised over the K clusters;
- target distribution (eq. 7): ``p_ik`` proportional to ``q_ik^2 / sum_i q_ik``,
  normalised over clusters;
- loss = reconstruction MSE + gamma * KL(P || Q).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from lungclam.device import autocast, batched_inference, batched_outputs, batches, epoch_sum, keep_on_device
from lungclam.kmeans import kmeans
from lungclam.model import ConvAutoencoder
from lungclam.train import embed_images

Progress = Callable[[str], None]


def soft_assignment(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Eq. 4: ``(N, K)`` cluster probabilities of embeddings ``z (N, J)`` given ``centroids (K, J)``.

    ``alpha`` is the Student t's degrees of freedom (1 in the paper).
    """
    dist2 = (z.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(-1)
    kernel = (1.0 + dist2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """Eq. 7: sharpened targets ``(N, K)``: ``q^2`` over cluster frequency, renormalised per row."""
    weight = q.pow(2) / q.sum(dim=0, keepdim=True)
    return weight / weight.sum(dim=1, keepdim=True)


class ClusteringModel(nn.Module):
    """A trained CAE plus K centroids in its embedding space (the clustering layer).

    The embedding enters the Student t kernel divided by ``scale`` (a constant, see
    :func:`embedding_scale`); ``centroids (K, J)`` live in that scaled space.
    """

    def __init__(self, autoencoder: ConvAutoencoder, centroids: torch.Tensor, alpha: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.autoencoder = autoencoder
        self.centroids = nn.Parameter(centroids.detach().clone().float())
        self.alpha = alpha
        self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def assign_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` probabilities from last-conv activations (encoder tail + clustering layer)."""
        return soft_assignment(self.autoencoder.embed(maps) / self.scale, self.centroids, self.alpha)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` cluster probabilities of images; no decoder involved (used by CLAM)."""
        return self.assign_from_maps(self.autoencoder.encode_maps(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.autoencoder.encode(x)
        return soft_assignment(z / self.scale, self.centroids, self.alpha), self.autoencoder.decode(z)


def embedding_scale(features: np.ndarray) -> float:
    """Median distance between the embeddings ``(N, J)`` of different images (1 if all coincide).

    The Student t kernel of eq. 4 has no length scale, but the autoencoder's embedding has
    an arbitrary one: with distances far below 1 every q is near uniform, and the drift of
    the embedding under the reconstruction loss then moves all points to one centroid; far
    above 1, q is one-hot and KL(P||Q) has nothing to sharpen. Dividing by this fixed
    constant puts typical distances near 1 (a Student t with that scale), whatever the CAE learnt.
    """
    from scipy.spatial.distance import pdist

    distances = pdist(np.asarray(features, dtype=np.float64))
    distances = distances[distances > 0]
    return float(np.median(distances)) if distances.size else 1.0


def within_cluster_scale(
    features: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    n_init: int = 20,
    fit: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Mean distance from each embedding ``(N, J)`` to its k-means centroid (1 if all coincide).

    A kernel length scale tied to the clusters' own spread rather than to the distances
    between clusters (compare :func:`embedding_scale`): with it, a point in the middle of
    its cluster has q near one-hot for well-separated clusters, so KL(P||Q) refines the
    boundaries instead of pulling neighbouring clusters together. The simulation study
    uses a small multiple of it (``simulation.kernel_scale``). ``fit``: the
    ``(labels, centroids)`` of :func:`lungclam.kmeans.kmeans` on these features, when the
    caller already has them (then ``n_clusters``, ``seed`` and ``n_init`` are not used).
    """
    x = np.asarray(features, dtype=np.float64)
    labels, centroids = fit if fit is not None else kmeans(x, n_clusters, seed, n_init)
    spread = float(np.mean(np.linalg.norm(x - centroids[labels], axis=1)))
    return spread if spread > 0 else 1.0


def init_centroids(features: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 20) -> np.ndarray:
    """k-means centroids ``(K, J)`` of embeddings ``(N, J)`` (best of ``n_init`` restarts)."""
    return kmeans(features, n_clusters, seed, n_init)[1]


def predict(
    model: ClusteringModel, images: np.ndarray, batch_size: int = 16, device: torch.device | None = None
) -> np.ndarray:
    """Soft assignments ``(N, K)`` float64 for ``(N, 1, *spatial)`` images, in eval mode."""
    return batched_inference(model, model.assign, images, batch_size, device)


@dataclass(frozen=True)
class ClusterGuard:
    """Label-free limits on the clustering phase; crossing one stops it (see :func:`fit_clusters`).

    ``keep_clusters``: stop when a cluster that had images at the start loses them all (the
    KL term's known degenerate solution: the encoder drifts until every image sits at one
    centroid). ``max_reconstruction_growth``: stop when the reconstruction MSE of all images
    exceeds this multiple of the pretrained encoder's (the embedding no longer describes the
    images it clusters); ``None`` disables it. ``max_moved``: stop when more than this share
    of the images have left the cluster k-means gave them at the start; ``None`` disables
    it. The phase is meant to refine the k-means start (Xie et al. 2016, DEC; Guo et al.
    2017, IDEC), and its KL term can instead pull whole groups across a boundary: in the
    simulation's intensity cases it took starts of 0.96-0.98 accuracy to 0.67-0.90 with
    seeds 1 and 2. Either way the weights and centroids of the last target refresh that
    stayed within the limits are restored.
    """

    keep_clusters: bool = True
    max_reconstruction_growth: float | None = 1.5
    max_moved: float | None = 0.05

    @classmethod
    def from_config(cls, cluster: dict) -> "ClusterGuard":
        """From the ``cluster`` config section (keys ``keep_clusters``, ``max_reconstruction_growth``)."""
        default = cls()
        growth = cluster.get("max_reconstruction_growth", default.max_reconstruction_growth)
        moved = cluster.get("max_moved", default.max_moved)
        return cls(
            keep_clusters=bool(cluster.get("keep_clusters", default.keep_clusters)),
            max_reconstruction_growth=None if growth is None else float(growth),
            max_moved=None if moved is None else float(moved),
        )

    def violation(
        self, counts: np.ndarray, start_counts: np.ndarray, error: float, start_error: float, moved: float = 0.0
    ) -> str:
        """Why a refresh with cluster sizes ``counts (K,)``, reconstruction MSE ``error`` and
        ``moved`` (the share of images off their start cluster) is outside the limits (``""``
        when it is not), against the start's sizes and MSE."""
        emptied = np.flatnonzero((counts == 0) & (start_counts > 0))
        if self.keep_clusters and emptied.size:
            return f"cluster(s) {', '.join(str(k + 1) for k in emptied)} lost all their images"
        if self.max_moved is not None and moved > self.max_moved:
            return f"{moved:.3f} of the images left their k-means start cluster (limit {self.max_moved:g})"
        growth = self.max_reconstruction_growth
        if growth is not None and start_error > 0 and error > growth * start_error:
            return (
                f"reconstruction MSE rose to {error:.3g}, {error / start_error:.2f}x the pretrained "
                f"{start_error:.3g} (limit {growth:g}x)"
            )
        return ""


@dataclass
class ClusterFit:
    """Result of :func:`fit_clusters`: the model, final ``q (N, K)``, labels and loss log.

    ``stop_reason``: ``"converged"``, ``"max_epochs"`` or ``"guard: <why>"`` (a
    :class:`ClusterGuard` limit was crossed and the last good refresh restored).
    """

    model: ClusteringModel
    q: np.ndarray
    labels: np.ndarray
    history: pd.DataFrame
    converged: bool
    stop_reason: str = "max_epochs"
    start_labels: np.ndarray | None = None  # (N,) the k-means start's labels


@torch.no_grad()
def _refresh_pass(
    model: ClusteringModel, data: torch.Tensor, batch_size: int, device: torch.device, with_error: bool
) -> tuple[torch.Tensor, float]:
    """Eval-mode ``q (N, K)`` float64 on the device and the mean reconstruction MSE of ``data``
    (NaN without ``with_error``: then no decoder pass and no read-back to the host)."""
    if not with_error:
        return batched_outputs(model, model.assign, data, batch_size, device), float("nan")
    model.to(device).eval()
    qs, error = [], torch.zeros((), dtype=torch.float64, device=device)
    for x in data.split(batch_size):
        x = x.to(device, non_blocking=True)
        q, recon = model(x)
        qs.append(q.float())
        error += ((recon.float() - x) ** 2).mean(dim=tuple(range(1, x.ndim))).double().sum()
    return torch.cat(qs).double(), float(error) / len(data)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def fit_clusters(
    autoencoder: ConvAutoencoder,
    images: np.ndarray,
    n_clusters: int,
    *,
    max_epochs: int = 100,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    gamma: float = 0.1,
    update_interval: int = 4,
    tol: float = 0.001,
    n_init: int = 20,
    seed: int = 0,
    device: torch.device | None = None,
    mixed_precision: bool = False,
    scale: float | None = None,
    guard: ClusterGuard | None = ClusterGuard(),
    progress: Progress | None = None,
) -> ClusterFit:
    """Run the clustering phase on pretrained ``autoencoder`` for ``images (N, 1, *spatial)``.

    Centroids start at k-means of the pretrained embeddings. Every ``update_interval``
    batches the target P is recomputed from Q on all images; training stops when, at such
    an update, fewer than ``tol`` (a fraction) of the labels changed since the previous
    one, or after ``max_epochs``, or when ``guard`` (None: no guard) sees the clustering
    collapse or the reconstruction degrade, in which case the previous update's weights
    are restored. Loss rows: ``epoch, reconstruction, kl, loss, label_change, moved,
    seconds`` (training-batch means; ``moved``: the share of labels off the k-means start
    at the last refresh). ``scale`` divides the embedding before the kernel; ``None``
    uses :func:`embedding_scale` of the pretrained embeddings, 1.0 gives the plain eq. 4.
    """
    device = device or torch.device("cpu")
    features = embed_images(autoencoder, images, device=device)
    scale = embedding_scale(features) if scale is None else float(scale)
    centroids = torch.from_numpy(init_centroids(features / scale, n_clusters, seed, n_init))
    model = ClusteringModel(autoencoder, centroids, scale=scale).to(device)
    data = keep_on_device(torch.from_numpy(np.ascontiguousarray(images)), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    mse, kl = nn.MSELoss(), nn.KLDivLoss(reduction="batchmean")
    # q, labels and targets stay on the device; a refresh reads back the share of labels
    # that changed (the stopping rule) and, with a guard, the cluster sizes and the MSE
    with_error = guard is not None and guard.max_reconstruction_growth is not None
    q, start_error = _refresh_pass(model, data, 16, device, with_error)
    labels, target = q.argmax(1), target_distribution(q).float().to(data.device)
    start_labels = labels
    start_counts = torch.bincount(labels, minlength=n_clusters).cpu().numpy()
    good = _snapshot(model) if guard else None
    rows, step, change, moved, stop_reason = [], 0, float("nan"), 0.0, "max_epochs"
    for epoch in range(1, max_epochs + 1):
        model.train()
        start, sums, seen = time.perf_counter(), epoch_sum(device, 2), 0
        for idx in batches(len(data), batch_size, generator, data.device):
            if step > 0 and step % update_interval == 0:
                q, error = _refresh_pass(model, data, 16, device, with_error)
                new = q.argmax(1)
                change = float((new != labels).double().mean())
                moved_now = float((new != start_labels).double().mean())
                why = (
                    guard.violation(
                        torch.bincount(new, minlength=n_clusters).cpu().numpy(),
                        start_counts,
                        error,
                        start_error,
                        moved_now,
                    )
                    if guard
                    else ""
                )
                if why:
                    model.load_state_dict(good)
                    stop_reason = f"guard: {why}"
                    break
                labels, target, moved = new, target_distribution(q).float().to(data.device), moved_now
                if change < tol:
                    stop_reason = "converged"
                    break
                if guard:
                    good = _snapshot(model)
                model.train()
            x = data[idx].to(device, non_blocking=True)
            with autocast(device, mixed_precision):
                q_batch, recon = model(x)
                rec = mse(recon.float(), x)
                div = kl(q_batch.float().clamp_min(1e-12).log(), target[idx].to(device, non_blocking=True))
                loss = rec + gamma * div
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([rec.detach(), div.detach()]).double() * len(idx)
            seen += len(idx)
            step += 1
        if seen:  # an epoch cut short by convergence before its first batch logs nothing
            sums = sums.cpu().numpy()
            rows.append(
                {
                    "epoch": epoch,
                    "reconstruction": sums[0] / seen,
                    "kl": sums[1] / seen,
                    "loss": (sums[0] + gamma * sums[1]) / seen,
                    "label_change": change,
                    "moved": moved,
                    "seconds": time.perf_counter() - start,
                }
            )
            if progress:
                progress(
                    f"cluster epoch {epoch}/{max_epochs}: loss {rows[-1]['loss']:.5f} "
                    f"(MSE {rows[-1]['reconstruction']:.5f}, KL {rows[-1]['kl']:.5f}), "
                    f"labels changed {change:.3f}"
                )
        if stop_reason != "max_epochs":
            if progress:
                progress(
                    f"converged: {change:.3f} of labels changed (< tol {tol})"
                    if stop_reason == "converged"
                    else f"stopped by the guard, last good target refresh restored: {stop_reason[7:]}"
                )
            break
    q = predict(model, images, device=device)
    return ClusterFit(
        model=model,
        q=q,
        labels=q.argmax(1),
        history=pd.DataFrame(rows),
        converged=stop_reason == "converged",
        stop_reason=stop_reason,
        start_labels=start_labels.cpu().numpy(),
    )


def clusters_table(subjects: list[str], q: np.ndarray) -> pd.DataFrame:
    """``subject, cluster, q_1..q_K`` with 1-based cluster numbers (argmax of q)."""
    table = pd.DataFrame({"subject": subjects, "cluster": q.argmax(1) + 1})
    for k in range(q.shape[1]):
        table[f"q_{k + 1}"] = q[:, k]
    return table
