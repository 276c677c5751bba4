package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

// anomalyList lists the anomalies the CA found in services' traffic.
func (c *cli) anomalyList(ctx context.Context, args []string) error {
	var output, server string
	since := 24 * time.Hour
	fs := c.flags("anomaly list", &output)
	fs.DurationVar(&since, "since", since, "how far back")
	fs.StringVar(&server, "server", "", "only the anomalies of this server's SPIFFE ID")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.ListAnomalies(ctx, &adminv1.ListAnomaliesRequest{Since: time.Now().Add(-since).Unix(), Server: server})
	if err != nil {
		return err
	}
	return c.print(output, rawProto(resp), func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AT\tKIND\tSERVER\tCALLER\tMETHOD\tDETAIL")
		for _, a := range resp.GetAnomalies() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", time.Unix(a.GetAt(), 0).UTC().Format(time.RFC3339), a.GetKind(), a.GetServer(), a.GetPeer(), a.GetMethod(), a.GetDetail())
		}
		return tw.Flush()
	})
}
