"""mSAM in your own training loop: plain PyTorch on scikit-learn's digits (no download), with
msam.MSAM as the only piece of msam. Run: .venv/bin/python scripts/own_loop_example.py"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import msam

torch.manual_seed(0)
digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
labels = torch.tensor(digits.target)
order = torch.randperm(len(labels))
train, test = order[:1440], order[1440:]

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
)
epochs, batch_size = 5, 64
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * (1440 // batch_size))


def per_sample_loss(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")  # one loss per sample


rule = msam.MSAM(model, m=8, rho=0.05, impl="auto")  # 8 micro-batches of 8; m=1 would be SAM
for epoch in range(epochs):
    model.train()
    shuffled = train[torch.randperm(len(train))]
    for start in range(0, len(shuffled) - batch_size + 1, batch_size):
        index = shuffled[start:start + batch_size]
        loss, logits = rule(per_sample_loss, images[index], labels[index])  # fills .grad with mSAM's direction
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    print(f"epoch {epoch + 1}: train loss {loss.item():.4f}, test accuracy {100 * accuracy:.2f}%")
print(f"implementation chosen by impl='auto': {rule.implementation}")
