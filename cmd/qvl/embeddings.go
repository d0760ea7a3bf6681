package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/store"
)

func init() {
	register("embeddings import", "build an embedding store from a safetensors file or a .npy array and an id list", runEmbeddingsImport)
	register("embeddings info", "describe an embedding store (and check it with --verify)", runEmbeddingsInfo)
}

func runEmbeddingsImport(args []string) error {
	fs := flag.NewFlagSet("embeddings import", flag.ExitOnError)
	out := fs.String("out", "", "store file to write (conventionally *.qvlstore); required")
	st := fs.String("safetensors", "", `safetensors file: "embeddings" [N, D] with "ids", and/or "image_embeds" [rows, H·(1+levels)] with "image_grid_thw" [M, 3] and "image_ids"`)
	npy := fs.String("npy", "", ".npy float array: [N, D] embeddings, or with --grid-thw [rows, H·(1+levels)] Qwen3-VL image embeddings")
	grid := fs.String("grid-thw", "", ".npy integer array [M, 3] of image grids (makes the .npy rows image embeddings)")
	ids := fs.String("ids", "", "file of ids, one per line, in row (or image) order; required with --npy")
	hidden := fs.Int("hidden-size", 0, "the model's hidden size H, to split image-embedding rows (or give --model)")
	modelDir := fs.String("model", "", "checkpoint directory whose config.json gives the hidden size")
	dtype := fs.String("dtype", "auto", "stored element type: float32 (read in place), bfloat16 (half the size), auto (bfloat16 if the source is)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: qvl embeddings import --out STORE (--safetensors FILE | --npy FILE --ids FILE [--grid-thw FILE]) [flags]\n\n")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if *out == "" || (*st == "") == (*npy == "") {
		fs.Usage()
		return errors.New("give --out and exactly one of --safetensors or --npy")
	}
	if *modelDir != "" && *hidden == 0 {
		cfg, err := loader.LoadConfig(filepath.Join(*modelDir, loader.ConfigFileName))
		if err != nil {
			return err
		}
		*hidden = cfg.HiddenSize
	}
	o := store.ImportOptions{DType: *dtype, HiddenSize: *hidden}
	if *ids != "" {
		list, err := store.ReadIDs(*ids)
		if err != nil {
			return err
		}
		o.IDs = list
	}
	var meta store.Meta
	var err error
	if *st != "" {
		meta, err = store.ImportSafetensors(*out, *st, o)
	} else {
		meta, err = store.ImportNPY(*out, store.NPYSource{Embeddings: *npy, GridTHW: *grid}, o)
	}
	if err != nil {
		return err
	}
	info, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %d embeddings (dim %d), %d image embeddings (hidden %d, %d DeepStack levels), %.1f MB, uuid %s\n",
		*out, meta.Embeddings, meta.EmbeddingDim, meta.ImageEmbeds, meta.HiddenSize, meta.DeepStackLevels, float64(info.Size())/1e6, meta.UUID)
	return nil
}

func runEmbeddingsInfo(args []string) error {
	fs := flag.NewFlagSet("embeddings info", flag.ExitOnError)
	list := fs.Int("list", 5, "how many ids to list")
	verify := fs.Bool("verify", false, "read the whole file: check every record, id and value")
	asJSON := fs.Bool("json", false, "print the metadata as JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: qvl embeddings info [flags] STORE\n\n")
		fs.PrintDefaults()
	}
	// Flags may come before or after the file.
	var files []string
	for fs.Parse(args); fs.NArg() > 0; fs.Parse(args) {
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) != 1 {
		fs.Usage()
		return errors.New("give one store file")
	}
	s, err := store.Open(files[0])
	if err != nil {
		return err
	}
	defer s.Close()
	m := s.Meta()
	if *asJSON {
		js, err := json.MarshalIndent(struct {
			Path string `json:"path"`
			store.Meta
		}{s.Path(), m}, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(js))
	} else {
		fmt.Printf("%s: %d items, uuid %s, created %s\n", s.Path(), s.Len(), m.UUID, m.Created)
		if m.Source != "" {
			fmt.Printf("  source: %s\n", m.Source)
		}
		if m.Embeddings > 0 {
			fmt.Printf("  %d embeddings of %d values (projected to tokens by a projector with input_dim %d)\n", m.Embeddings, m.EmbeddingDim, m.EmbeddingDim)
		}
		if m.ImageEmbeds > 0 {
			fmt.Printf("  %d Qwen3-VL image embeddings: hidden size %d, %d DeepStack levels\n", m.ImageEmbeds, m.HiddenSize, m.DeepStackLevels)
		}
		for i := 0; i < min(*list, s.Len()); i++ {
			it, err := s.At(i)
			if err != nil {
				return err
			}
			switch it.Kind {
			case store.KindImageEmbeds:
				fmt.Printf("  %-24q %s, grid %v, %d tokens, %s\n", it.ID, it.Kind, it.GridTHW, it.Tokens, it.DType)
			default:
				fmt.Printf("  %-24q %s, %d values, %s\n", it.ID, it.Kind, it.Cols, it.DType)
			}
		}
		if s.Len() > *list {
			fmt.Printf("  … and %d more\n", s.Len()-*list)
		}
	}
	if *verify {
		if err := s.Verify(); err != nil {
			return err
		}
		fmt.Println("verified: every record, id and value is sound")
	}
	return nil
}
