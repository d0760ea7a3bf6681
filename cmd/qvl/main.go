// Command qvl serves Qwen3-VL with its vision encoder removed: images arrive as embeddings.
//
//	qvl serve                 serve the built-in demo model (or --model DIR) over an OpenAI-compatible API
//	qvl generate              run one prompt
//	qvl verify                check the runtime against reference outputs (goldens)
//	qvl tokenize              turn text or chat messages into token ids
//	qvl synth                 write a checkpoint with random weights of a real model's shape
//	qvl embeddings import     build an embedding store from safetensors or .npy files
//	qvl bench                 measure the engine or a running server
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// command is one subcommand: it parses its own flags from args.
type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

func usage() {
	fmt.Fprintf(os.Stderr, "qvl — Qwen3-VL serving with precomputed image embeddings\n\nUsage: qvl <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-20s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'qvl <command> -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name, args := os.Args[1], os.Args[2:]
	// Two-word commands ("embeddings import", "bench serve") are registered with a space.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		if _, ok := commands[name+" "+args[0]]; ok {
			name, args = name+" "+args[0], args[1:]
		}
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "qvl: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	if err := cmd.run(args); err != nil {
		fmt.Fprintf(os.Stderr, "qvl %s: %v\n", name, err)
		os.Exit(1)
	}
}
