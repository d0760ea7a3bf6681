package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

func init() {
	register("tokenize", "turn JSON strings (or, with --chat, JSON arrays of chat messages) on stdin into token ids", runTokenize)
}

func runTokenize(args []string) error {
	fs := flag.NewFlagSet("tokenize", flag.ExitOnError)
	tokPath := fs.String("tokenizer", "", "tokenizer.json, or a checkpoint directory holding one (default: the built-in Qwen3 tokenizer)")
	useChat := fs.Bool("chat", false, "each line is a JSON array of OpenAI chat messages: print the ids of the rendered prompt with the generation prompt")
	tmplPath := fs.String("template", "", "chat template: .jinja, chat_template.json, tokenizer_config.json or a directory (default: the one beside the tokenizer)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: qvl tokenize [flags] < lines\n\n"+
			"Reads one JSON value per line from stdin and writes one JSON array of token ids per line.\n"+
			"With --chat, image parts stay one <|image_pad|> token each (their size depends on the model and the store).\n\n")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	var tok *tokenizer.Tokenizer
	var err error
	if *tokPath == "" {
		tok, err = tokenizer.FromJSON(qwen3.TokenizerJSON())
	} else {
		tok, err = tokenizer.Load(*tokPath)
	}
	if err != nil {
		return err
	}
	var tmpl *chat.Template
	if *useChat {
		switch {
		case *tmplPath != "":
			tmpl, err = chat.Load(*tmplPath)
		case *tokPath != "":
			dir := *tokPath
			if fi, serr := os.Stat(dir); serr == nil && !fi.IsDir() {
				dir = filepath.Dir(dir)
			}
			tmpl, err = chat.Load(dir)
		default:
			tmpl, err = chat.Default()
		}
		if err != nil {
			return err
		}
	}
	return tokenizeLines(os.Stdin, os.Stdout, tok, tmpl)
}

// tokenizeLines reads JSON lines from r and writes their ids to w; tmpl non-nil means chat.
func tokenizeLines(r io.Reader, w io.Writer, tok *tokenizer.Tokenizer, tmpl *chat.Template) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	out := bufio.NewWriter(w)
	defer out.Flush()
	pad, hasPad := tok.TokenID("<|image_pad|>")
	for line := 1; sc.Scan(); line++ {
		text := sc.Bytes()
		if len(text) == 0 {
			continue
		}
		var ids []int
		if tmpl != nil {
			msgs, err := chat.ParseMessages(text)
			if err != nil {
				return fmt.Errorf("line %d: %w", line, err)
			}
			counts := make([]int, len(chat.ImageParts(msgs)))
			for i := range counts {
				counts[i] = 1
			}
			if len(counts) > 0 && !hasPad {
				return fmt.Errorf("line %d: the messages hold images, but the tokenizer has no <|image_pad|> token", line)
			}
			if ids, err = tmpl.Encode(tok, msgs, chat.Options{AddGenerationPrompt: true}, pad, counts); err != nil {
				return fmt.Errorf("line %d: %w", line, err)
			}
		} else {
			var s string
			if err := json.Unmarshal(text, &s); err != nil {
				return fmt.Errorf("line %d: want a JSON string: %w", line, err)
			}
			ids = tok.Encode(s)
		}
		if ids == nil {
			ids = []int{}
		}
		js, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		out.Write(js)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	return nil
}
