// Command compose-validate loads Compose files the way `docker compose config` does, offline,
// with github.com/compose-spec/compose-go/v2: the file is checked against the Compose
// Specification JSON schema embedded in that module (compose-spec.json), interpolated,
// normalised and checked for consistency (networks, volumes, secrets, configs and depends_on
// that name nothing, services sharing another's network namespace that does not exist, ...).
//
// The environment is empty unless given with -env, so the result does not depend on the caller's
// shell: every variable the file uses must have a default (${VAR:-default}) or be passed.
//
// Usage: compose-validate [-json] [-env KEY=VALUE]... compose.yaml [override.yaml...]
// Prints the normalised project (as `docker compose config --format json`) with -json, else a
// one-line summary; exit 0 valid, 1 invalid, 2 usage.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

type envFlags map[string]string

func (e envFlags) String() string { return "" }

func (e envFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("-env wants KEY=VALUE, got %q", v)
	}
	e[k] = val
	return nil
}

func main() {
	env := envFlags{}
	asJSON := flag.Bool("json", false, "print the normalised project as JSON")
	project := flag.String("project-name", "mcp-opa-gateway", "the Compose project name")
	flag.Var(env, "env", "an environment variable for interpolation, KEY=VALUE (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-validate [-json] [-env KEY=VALUE]... compose.yaml [override.yaml...]")
		os.Exit(2)
	}
	files := make([]types.ConfigFile, 0, flag.NArg())
	for _, f := range flag.Args() {
		abs, err := filepath.Abs(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		files = append(files, types.ConfigFile{Filename: abs})
	}
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(files[0].Filename),
		ConfigFiles: files,
		Environment: types.Mapping(env),
	}
	p, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName(*project, true)
		o.ResolvePaths = true
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "compose-validate: %v\n", err)
		os.Exit(1)
	}
	if *asJSON {
		out, err := p.MarshalJSON()
		if err != nil {
			fmt.Fprintf(os.Stderr, "compose-validate: %v\n", err)
			os.Exit(1)
		}
		os.Stdout.Write(append(out, '\n'))
		return
	}
	names := p.ServiceNames()
	sort.Strings(names)
	fmt.Printf("compose-validate: %s valid (%d services: %s)\n", flag.Arg(0), len(names), strings.Join(names, ", "))
}
