package api

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/store"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

func (s *AdminServer) federations() (Federations, error) {
	if s.cfg.Federations == nil {
		return nil, status.Error(codes.FailedPrecondition, "this CA does not federate")
	}
	return s.cfg.Federations, nil
}

// CreateFederation implements adminv1.AdminServer.
func (s *AdminServer) CreateFederation(ctx context.Context, req *adminv1.CreateFederationRequest) (*adminv1.CreateFederationResponse, error) {
	feds, err := s.federations()
	if err != nil {
		return nil, err
	}
	f := req.GetFederation()
	if f == nil {
		return nil, status.Error(codes.InvalidArgument, "federation: missing")
	}
	if err := federation.Check(s.cfg.TrustDomain, f); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation: %v", err)
	}
	stored, err := feds.Put(ctx, f)
	if err != nil {
		return nil, s.cfg.internal(ctx, "put federation", err)
	}
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.FederationPut, Actor: actor(ctx), TrustDomain: f.GetTrustDomain(),
		URL: f.GetBundleEndpointUrl(), Reason: f.GetProfile(), Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.CreateFederationResponse{Federation: stored}, nil
}

// ListFederations implements adminv1.AdminServer.
func (s *AdminServer) ListFederations(ctx context.Context, _ *adminv1.ListFederationsRequest) (*adminv1.ListFederationsResponse, error) {
	if s.cfg.Federations == nil {
		return &adminv1.ListFederationsResponse{}, nil
	}
	all, err := s.cfg.Federations.List(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "list federations", err)
	}
	return &adminv1.ListFederationsResponse{Federations: all}, nil
}

// DeleteFederation implements adminv1.AdminServer.
func (s *AdminServer) DeleteFederation(ctx context.Context, req *adminv1.DeleteFederationRequest) (*adminv1.DeleteFederationResponse, error) {
	feds, err := s.federations()
	if err != nil {
		return nil, err
	}
	err = feds.Delete(ctx, req.GetTrustDomain())
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no federation with %q", req.GetTrustDomain())
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "delete federation", err)
	}
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.FederationDelete, Actor: actor(ctx), TrustDomain: req.GetTrustDomain(), Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.DeleteFederationResponse{}, nil
}

// federatedBundles returns the federated bundles for Sync and their key.
func (c *Config) federatedBundles() ([]*typesv1.Bundle, string, <-chan struct{}) {
	if c.Federations == nil {
		return nil, "", nil
	}
	ch := c.Federations.Changed()
	b, key := c.Federations.Bundles()
	return b, key, ch
}
