"""Every fused_optim optimizer (and SGD-momentum) training the same small MLP on scikit-learn's
digits: 1797 8x8 images of handwritten digits, bundled with scikit-learn (no download).

Same initial weights, same train/test split and same minibatch order for every optimizer;
each gets a learning rate of its kind. Per epoch: train and test loss and accuracy.

    python examples/digits_training.py [--out DIR] [--epochs N]
"""
import copy
import time

import torch
import torch.nn.functional as F

import fused_optim
from _plotting import command_line, pyplot, save

BATCH = 32
# lrs (ours, not tuned beyond a few tries): Adai's lr is the SGD-scale effective step (its
# momentum is an average, not a sum), so 0.5 matches SGD's 0.05 with momentum 0.9. InvAdam's step
# is lr * mhat * sqrt(vhat), of order lr * g^2: with per-element gradients of ~1e-3 to 1e-2 here
# (rms 6e-3 at the start) it needs lr ~10 (at 1e-3 it does not train). DualAdam shares one lr between its InvAdam start and
# its Adam end, so it takes Adam's 1e-3 (its InvAdam phase then barely moves the weights);
# switch_rate 0.005 makes it pure Adam from step 200, as the paper's 8e-5 does after 16% of
# its CIFAR runs.
OPTIMIZERS = {
    "Adai": (0.5, lambda p: fused_optim.Adai(p, lr=0.5)),
    "AdaiW": (0.5, lambda p: fused_optim.AdaiW(p, lr=0.5, weight_decay=5e-4)),
    "AdaMomentum": (1e-3, lambda p: fused_optim.AdaMomentum(p, lr=1e-3)),
    "InvAdam": (10.0, lambda p: fused_optim.InvAdam(p, lr=10.0)),
    "DualAdam": (1e-3, lambda p: fused_optim.DualAdam(p, lr=1e-3, switch_rate=0.005)),
    "Adam": (1e-3, lambda p: fused_optim.Adam(p, lr=1e-3)),
    "AdamW": (1e-3, lambda p: fused_optim.AdamW(p, lr=1e-3, weight_decay=1e-2)),
    "SGD-momentum": (0.05, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
}


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16  # pixels are 0..16
    x_train, x_test, y_train, y_test = train_test_split(x, torch.tensor(y), test_size=0.2, random_state=0,
                                                        stratify=y)
    return x_train, y_train, x_test, y_test


def evaluate(model, x, y):
    with torch.no_grad():
        logits = model(x)
        return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def train(make_optimizer, initial_model, data, orders):
    """Curves per epoch (epoch 0: the initial model): train loss, train acc, test loss, test acc."""
    x_train, y_train, x_test, y_test = data
    model = copy.deepcopy(initial_model)
    opt = make_optimizer(model.parameters())
    curves = [evaluate(model, x_train, y_train) + evaluate(model, x_test, y_test)]
    for order in orders:
        for i in range(0, len(order), BATCH):
            batch = order[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
        curves.append(evaluate(model, x_train, y_train) + evaluate(model, x_test, y_test))
    return torch.tensor(curves)


def main():
    parser = command_line(__doc__, "epochs", 30, "epochs per optimizer")
    args = parser.parse_args()
    try:
        data = load_data()
    except ImportError:
        print("this example needs scikit-learn (for its bundled digits data): pip install scikit-learn")
        return

    torch.manual_seed(0)
    initial_model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    gen = torch.Generator().manual_seed(0)
    orders = [torch.randperm(len(data[1]), generator=gen) for _ in range(args.epochs)]

    print(f"MLP 64-128-10, {len(data[1])} train / {len(data[3])} test images, batch {BATCH}, {args.epochs} epochs")
    print(f"{'optimizer':<13} {'lr':>6} {'train loss':>11} {'train acc':>10} {'test loss':>10} {'test acc':>9}")
    start = time.perf_counter()
    results = {}
    for name, (lr, make) in OPTIMIZERS.items():
        results[name] = curves = train(make, initial_model, data, orders)
        train_loss, train_acc, test_loss, test_acc = curves[-1].tolist()
        print(f"{name:<13} {lr:>6g} {train_loss:11.4f} {train_acc:10.2%} {test_loss:10.4f} {test_acc:9.2%}")
    print(f"time: {time.perf_counter() - start:.1f} s")
    plot(results, args.out / "digits_training.png")


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    titles = ["train loss", "train accuracy", "test loss", "test accuracy"]
    for column, ax in enumerate(axes.T.flatten()):  # left: train, right: test
        for i, (name, curves) in enumerate(results.items()):
            # Adai family solid, Adam family dashed, SGD dotted
            style = "-" if name.startswith("Adai") else ":" if name.startswith("SGD") else "--"
            ax.plot(curves[:, column], style, color=plt.cm.tab10(i), label=name)
        ax.set(title=titles[column], yscale="log" if "loss" in titles[column] else "linear")
        if "accuracy" in titles[column]:
            ax.set_ylim(0.9, 1.0)  # all reach 90% within a few epochs; the differences are above it
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
