import torch

from autotimm_deploy import ObjectDetector
from autotimm_deploy.parity.random_init import randomize_norms, spread_head


def test_randomize_norms_and_spread_head():
    torch.manual_seed(0)
    model = ObjectDetector("test_resnet", num_classes=3, fpn_channels=32, num_convs=1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(torch.count_nonzero(m.weight) == 0 for m in bns)  # timm's zero-init gammas
    randomize_norms(model, seed=1)
    assert not model.training
    assert all(torch.count_nonzero(m.weight) == m.num_features for m in bns)
    assert all(m.running_mean.abs().sum() > 0 for m in bns)
    spread_head(model, seed=1)
    pred = model.head.cls_subnet[-1]
    assert abs(pred.weight.std().item() - (2.0 / (32 * 9)) ** 0.5) < 0.01 and torch.count_nonzero(pred.bias) == 0
    with torch.no_grad():
        cls, box, _ = model(torch.randn(1, 3, 64, 64))
    assert cls[0].std() > 0.3 and box[0].std() > 0.3  # outputs now depend on the input
