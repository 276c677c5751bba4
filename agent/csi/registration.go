package csi

import (
	"context"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// supportedVersions are the CSI versions the plugin speaks, for the
// kubelet's check.
var supportedVersions = []string{"1.0.0"}

// registration is the kubelet's plugin registration service, as
// node-driver-registrar serves it: the kubelet finds the socket in its
// plugins_registry, asks for the plugin's name and CSI endpoint, and says
// whether it registered it.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	d *Driver
}

func registerRegistration(s *grpc.Server, d *Driver) {
	registerapi.RegisterRegistrationServer(s, registration{d: d})
}

func (r registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type: registerapi.CSIPlugin, Name: r.d.cfg.DriverName, Endpoint: r.d.cfg.Endpoint, SupportedVersions: supportedVersions,
	}, nil
}

func (r registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	d := r.d
	d.statusMu.Lock()
	d.registered, d.regError = s.GetPluginRegistered(), s.GetError()
	d.statusMu.Unlock()
	if s.GetPluginRegistered() {
		d.log.Info("the kubelet registered the CSI plugin", "driver", d.cfg.DriverName)
	} else {
		d.log.Error("the kubelet refused to register the CSI plugin", "driver", d.cfg.DriverName, "error", s.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
