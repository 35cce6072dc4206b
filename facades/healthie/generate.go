package healthie

//go:generate go run github.com/Khan/genqlient@v0.8.1 genqlient.yaml
