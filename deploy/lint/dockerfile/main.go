// Command dockerfile-lint lints Dockerfiles offline with BuildKit's own Dockerfile linter: the
// rules `docker build --check` runs (dockerfile2llb.DockerfileLint, every rule, experimental ones
// included), plus a few image-hygiene rules of hadolint that BuildKit does not have:
//
//	PinnedBaseImage   every FROM of an external image names a tag (not "latest") or a digest (hadolint DL3006/DL3007)
//	NonRootUser       the final stage ends with a numeric, non-zero USER (hadolint DL3002, numeric for runAsNonRoot)
//	NoAddFromURL      ADD never fetches a URL (hadolint DL3020)
//
// Base images are never pulled: a stub resolver answers every image with an empty linux/amd64
// configuration, so the rules that need the base image's own config (e.g. InvalidBaseImagePlatform)
// see a matching platform and stay silent. CopyIgnoredFile needs a build context and is not run.
//
// Usage: dockerfile-lint [-json] Dockerfile...   exit 0 clean, 1 findings, 2 usage or read errors.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/opencontainers/go-digest"
)

// Finding is one problem, in the output of -json.
type Finding struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Rule    string `json:"rule"`
	Message string `json:"message"`
}

type offlineResolver struct{}

// ResolveImageConfig answers every image with an empty linux/amd64 configuration (one layer), never the network.
func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}`)
	return ref, "", cfg, nil
}

func buildkitFindings(file string, dt []byte) ([]Finding, error) {
	var out []Finding
	opt := dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{LinterConfig: &linter.Config{ExperimentalAll: true}},
		SourceMap:    &llb.SourceMap{Filename: file, Language: "Dockerfile", Data: dt, Definition: &llb.Definition{}},
		MetaResolver: offlineResolver{},
	}
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, opt)
	if err != nil {
		return nil, err
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 && w.Location.Ranges[0].Start != nil {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		out = append(out, Finding{file, line, w.RuleName, w.Detail})
	}
	if res.Error != nil {
		line := 0
		if len(res.Error.Location.Ranges) > 0 && res.Error.Location.Ranges[0].Start != nil {
			line = int(res.Error.Location.Ranges[0].Start.Line)
		}
		out = append(out, Finding{file, line, "BuildError", res.Error.Message})
	}
	return out, nil
}

var (
	numericUser = regexp.MustCompile(`^[0-9]+(:[0-9]+)?$`)
	urlSource   = regexp.MustCompile(`^(https?|git)://|^git@`)
)

// hygieneFindings runs the rules BuildKit lacks on the parsed instructions.
func hygieneFindings(file string, dt []byte) ([]Finding, error) {
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, err
	}
	var out []Finding
	stages := map[string]bool{}
	lastUser, lastUserLine, inStage := "", 0, false
	for _, node := range ast.AST.Children {
		cmd := strings.ToLower(node.Value)
		var args []string
		for n := node.Next; n != nil; n = n.Next {
			args = append(args, n.Value)
		}
		switch cmd {
		case "from":
			if len(args) == 0 {
				continue
			}
			image := args[0]
			isStageRef := stages[strings.ToLower(image)] // a stage declared above, not an image
			if len(args) >= 3 && strings.EqualFold(args[1], "as") {
				stages[strings.ToLower(args[2])] = true
			}
			lastUser, lastUserLine, inStage = "", node.StartLine, true
			if isStageRef || image == "scratch" {
				continue
			}
			if strings.Contains(image, "$") {
				out = append(out, Finding{file, node.StartLine, "PinnedBaseImage", fmt.Sprintf("base image %q is not a literal: pin it", image)})
				continue
			}
			name := image
			if at := strings.Index(name, "@"); at >= 0 {
				continue // a digest pins it
			}
			slash := strings.LastIndex(name, "/")
			colon := strings.LastIndex(name, ":")
			if colon <= slash {
				out = append(out, Finding{file, node.StartLine, "PinnedBaseImage", fmt.Sprintf("base image %q has no tag: pin a version tag or a digest", image)})
			} else if name[colon+1:] == "latest" {
				out = append(out, Finding{file, node.StartLine, "PinnedBaseImage", fmt.Sprintf("base image %q uses the latest tag", image)})
			}
		case "user":
			if len(args) > 0 {
				lastUser, lastUserLine = args[0], node.StartLine
			}
		case "add":
			for _, a := range args {
				if !strings.HasPrefix(a, "--") && urlSource.MatchString(a) {
					out = append(out, Finding{file, node.StartLine, "NoAddFromURL", fmt.Sprintf("ADD fetches %q: download in a build stage with a checksum, then COPY", a)})
				}
			}
		}
	}
	if inStage {
		switch {
		case lastUser == "":
			out = append(out, Finding{file, lastUserLine, "NonRootUser", "the final stage sets no USER: it would run as root"})
		case !numericUser.MatchString(lastUser):
			out = append(out, Finding{file, lastUserLine, "NonRootUser", fmt.Sprintf("USER %q is not numeric: Kubernetes runAsNonRoot cannot verify a name", lastUser)})
		case lastUser == "0" || strings.HasPrefix(lastUser, "0:"):
			out = append(out, Finding{file, lastUserLine, "NonRootUser", "the final stage runs as root (USER 0)"})
		}
	}
	return out, nil
}

func main() {
	asJSON := flag.Bool("json", false, "print the findings as a JSON array")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint [-json] Dockerfile...")
		os.Exit(2)
	}
	findings := []Finding{}
	for _, file := range flag.Args() {
		dt, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		bk, err := buildkitFindings(file, dt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			os.Exit(2)
		}
		hy, err := hygieneFindings(file, dt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			os.Exit(2)
		}
		findings = append(append(findings, bk...), hy...)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(findings)
	} else {
		for _, f := range findings {
			fmt.Printf("%s:%d: %s: %s\n", f.File, f.Line, f.Rule, f.Message)
		}
		if len(findings) == 0 {
			fmt.Printf("dockerfile-lint: %d file(s), no findings\n", flag.NArg())
		}
	}
	if len(findings) > 0 {
		os.Exit(1)
	}
}
