"""A real Kubernetes control plane for the e2e tests and the lab, one module per job:
:mod:`.controlplane` (the :class:`~.controlplane.ControlPlane` fixture), the flags of
each component (:mod:`.etcd`, :mod:`.apiserver`, :mod:`.controllermanager`,
:mod:`.scheduler`), its PKI (:mod:`.certs`), kubeconfigs (:mod:`.kubeconfig`) and
processes (:mod:`.processes`)."""
