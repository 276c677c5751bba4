package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/internal/signetid"
)

// print writes v as output asks: json (indented), yaml (the same shape),
// or text, which the command writes.
func (c *cli) print(output string, v any, text func(w io.Writer) error) error {
	switch output {
	case "json", "yaml":
		raw, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if output == "yaml" {
			if raw, err = yaml.JSONToYAML(raw); err != nil {
				return err
			}
			_, err = c.stdout.Write(raw)
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", raw)
		return err
	default:
		return text(c.stdout)
	}
}

// dialAdmin connects to the admin API: on its Unix socket, or over mTLS
// with the caller's X509-SVID from the Workload API, to the CA of its
// trust domain (spiffe://<td>/signet/ca).
func (c *cli) dialAdmin(ctx context.Context) (*grpc.ClientConn, error) {
	switch {
	case c.socket != "" && c.address != "":
		return nil, errors.New("--admin-socket and --admin-address (or their environment variables): give one")
	case c.address != "":
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		source, err := workloadapi.NewX509Source(sctx)
		if err != nil {
			return nil, fmt.Errorf("--admin-address authenticates with the X509-SVID of the Workload API ($SPIFFE_ENDPOINT_SOCKET): %w", err)
		}
		svid, err := source.GetX509SVID()
		if err != nil {
			source.Close()
			return nil, err
		}
		ca := signetid.CA(svid.ID.TrustDomain())
		conn, err := grpc.NewClient(c.address, grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(source, source, tlsconfig.AuthorizeID(ca))))
		if err != nil {
			source.Close()
			return nil, err
		}
		c.closers = append(c.closers, func() { source.Close() })
		return conn, nil
	case c.socket != "":
		sock, err := filepath.Abs(c.socket)
		if err != nil {
			return nil, err
		}
		return grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	default:
		return nil, errors.New("no admin API: pass --admin-socket PATH (or set SIGNET_ADMIN_SOCKET), or --admin-address HOST:PORT (or SIGNET_ADMIN_ADDRESS)")
	}
}
