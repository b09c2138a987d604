"""A frozen network kept in host memory between its calls (``--offload-teacher``)."""

import contextlib

import torch


class HostResident:
    """A frozen network whose weights live in (pinned) host memory; each call copies them to
    ``device`` and frees the copy when it returns, so the network occupies GPU memory only while
    it runs. Calls and ``jvp`` go through that copy; other attributes (``config``,
    ``TIMESTEP_SCALE``) are the network's."""

    def __init__(self, net: torch.nn.Module, device):
        self.net, self.device = net, torch.device(device)
        pin = self.device.type == "cuda"
        self._host = [p.detach().to("cpu").pin_memory() if pin else p.detach().to("cpu") for p in net.parameters()]
        for p, host in zip(net.parameters(), self._host):
            p.data = host

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)

    @contextlib.contextmanager
    def _on_device(self):
        params = list(self.net.parameters())
        for p, host in zip(params, self._host):
            p.data = host.to(self.device, non_blocking=True)
        try:
            yield self.net
        finally:
            for p, host in zip(params, self._host):
                p.data = host

    def __call__(self, *inputs):
        with self._on_device() as net:
            return net(*inputs)

    def jvp(self, *inputs):
        with self._on_device() as net:
            return net.jvp(*inputs)
